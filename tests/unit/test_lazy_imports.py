"""The deferred imports (controller/lazy_imports.py): the operator's modules load without the generated
classes of kubernetes_asyncio they never use, without the synchronous client's config/stream/watch, the
CEL library's command line, Alembic or the other commands of the CLI; and what they use (the client's
deserializer, `from kubernetes import config`, CEL, every command) still works. In a fresh interpreter
each, since the stand-ins only take effect before the libraries are first imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_operator_loads_without_the_models_it_does_not_use() -> None:
    out = run(
        """
        import sys
        import controller.cli.main, controller.operator.main
        models = [m for m in sys.modules if m.startswith("kubernetes_asyncio.client.models.")]
        print(len(models), "kubernetes_asyncio.client.models.v1_pod" in sys.modules)
        """
    )
    count, pod = out.split()
    assert pod == "False" and int(count) < 50, out


def test_the_classes_it_names_and_the_deserializer_work() -> None:
    out = run(
        """
        import asyncio
        from controller import lazy_imports
        lazy_imports.install()
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client import V1ConfigMap, CustomObjectsApi, ApiClient
        assert client.V1ConfigMap is V1ConfigMap and "V1Pod" in dir(client.models)

        async def main():
            api = ApiClient(client.Configuration(host="https://127.0.0.1:1"))
            class Response:
                data = '{"metadata": {"name": "m", "labels": {"a": "b"}}, "data": {"k": "v"}}'
            found = api.deserialize(Response(), "V1ConfigMap")
            await api.close()
            print(type(found).__name__, found.metadata.name, found.data["k"], type(found.metadata).__name__)

        asyncio.run(main())
        """
    )
    assert out == "V1ConfigMap m v V1ObjectMeta"


def test_the_operator_loads_none_of_what_only_the_cli_and_migrations_use() -> None:
    out = run(
        """
        import sys
        import controller.cli.main, controller.operator.main
        never = ["kubernetes.config", "kubernetes.stream", "kubernetes.watch", "requests", "prompt_toolkit",
                 "typer", "alembic", "controller.cli.governance", "controller.cli.dashboard", "textual", "pygments",
                 "rich.syntax"]
        print([name for name in never if name in sys.modules])
        from kopf._cogs.helpers import thirdparty
        print(thirdparty.V1ObjectMetaSync.__name__)  # kopf still recognises the synchronous client's models
        """
    )
    assert out.splitlines() == ["[]", "V1ObjectMeta"], out


def test_what_is_deferred_still_works() -> None:
    out = run(
        """
        from controller import lazy_imports
        lazy_imports.install()
        import kubernetes
        from kubernetes import client, config
        import cel, httpx, sys
        print("pygments" in sys.modules, httpx.main.__name__, callable(sys.modules["httpx._main"].print_help),
              "pygments" in sys.modules)
        print(kubernetes.__version__ > "30", callable(config.load_kube_config), client.V1Pod.__name__,
              kubernetes.watch.Watch.__name__, cel.evaluate("1 + 2", {}), callable(cel.cli.main))
        """
    )
    assert out.splitlines() == ["False main True True", "True True V1Pod Watch 3 True"], out


def test_every_command_is_there() -> None:
    from click.testing import CliRunner

    from controller.cli.main import main

    help_text = CliRunner().invoke(main, ["--help"]).output
    for command in ("operator", "up", "run", "status", "approve", "policy", "audit", "dashboard", "mcp", "undo"):
        assert f"  {command} " in help_text, help_text
