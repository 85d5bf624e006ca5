"""What the front doors share (the `airun` command and the MCP server): reading Workflow manifests,
summing up a workflow's state, the capability catalogue, the API server's error messages. Neither
click nor MCP lives here: both front doors sit above this package."""
