module github.com/aifirst/airun/tools/lua

// gopher-lua's interpreter (glua): Argo CD runs resource health checks with gopher-lua, so the health.lua
// scripts under gitops/argocd are tested with the same Lua implementation.
go 1.24.0

tool github.com/yuin/gopher-lua/cmd/glua

require (
	github.com/chzyer/readline v0.0.0-20180603132655-2972be24d48e // indirect
	github.com/yuin/gopher-lua v1.1.2 // indirect
	golang.org/x/sys v0.0.0-20190204203706-41f3e6584952 // indirect
)
