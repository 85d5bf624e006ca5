"""`airun mcp`: the MCP server for AI agents (every tool call is a governed Workflow, as the caller)."""

from __future__ import annotations

import logging

import click


@click.command()
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http"]),
    default="stdio",
    show_default=True,
    help="stdio: started by the MCP client, acting as this kubeconfig's identity. http: streamable HTTP, "
    "acting as the Kubernetes token each request carries (Authorization: Bearer).",
)
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address of the HTTP endpoint.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port of the HTTP endpoint (/mcp).")
@click.option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file (default: ~/.kube/config or in-cluster).")
@click.option("--context", help="Kubeconfig context (stdio: whose identity; http: only where the cluster is).")
@click.option("-n", "--namespace", help="Namespace of the workflows (default: the context's, or default).")
@click.option(
    "--wait",
    "wait_seconds",
    type=float,
    default=30,
    show_default=True,
    help="How long a tool call waits for its workflow to end before it returns the workflow's name "
    "(keep it below the MCP client's own timeout).",
)
@click.option(
    "--test-capabilities/--no-test-capabilities",
    envvar="AIRUN_TEST_CAPABILITIES",
    default=False,
    help="Also offer the test.* capabilities (when the operator runs them: tests and demo only).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log to standard error.")
def mcp(
    transport: str,
    bind: str,
    port: int,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    wait_seconds: float,
    test_capabilities: bool,
    verbose: bool,
) -> None:
    """Serve the capabilities as MCP tools to AI agents. Every call becomes a Workflow created as the
    caller, so policy, approval, audit and compensation apply; a call that needs approval returns the
    pending Approval's name at once. See docs/mcp.md."""
    import anyio

    from controller.mcp.kube import IdentityError, default_namespace
    from controller.mcp.server import Settings, serve_http, serve_stdio

    # stdout is the MCP channel on stdio: logs go to standard error only.
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    if transport == "http" and bind not in ("127.0.0.1", "::1", "localhost"):
        click.echo(f"warning: serving MCP on {bind}: put TLS in front of it (tokens travel in headers)", err=True)
    settings = Settings(
        namespace=namespace or default_namespace(kubeconfig, context),
        wait_seconds=wait_seconds,
        include_test_capabilities=test_capabilities,
    )
    try:
        if transport == "stdio":
            anyio.run(serve_stdio, kubeconfig, context, settings)
        else:
            anyio.run(lambda: serve_http(kubeconfig, context, settings, bind=bind, port=port))
    except IdentityError as error:
        raise click.ClickException(str(error)) from error


COMMANDS: list[click.Command] = [mcp]
