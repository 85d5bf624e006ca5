module github.com/aifirst/airun/tools/e2e/pause

go 1.24.0
