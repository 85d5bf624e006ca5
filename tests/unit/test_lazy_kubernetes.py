"""The lazy kubernetes_asyncio.client (controller/lazy_kubernetes.py): the operator's modules load without
the generated classes they never use, and the ones they use (and the client's deserializer) still work.
In a fresh interpreter each, since the stand-ins only take effect before the client is first imported."""

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
        from controller import lazy_kubernetes
        lazy_kubernetes.install()
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
