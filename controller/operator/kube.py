"""The operator's connection to the API server: one set of credentials for kopf's watches and for the
operator's own status PATCHes (kubernetes_asyncio)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes_asyncio import client, config

from controller import API_GROUP, API_VERSION
from controller.capabilities.handlers.k8s import KubeGateway


@dataclass
class Connection:
    api: client.ApiClient
    configuration: client.Configuration

    @property
    def token(self) -> str | None:
        """The bearer token, wherever the loader put it: a kubeconfig's under "authorization", the in-cluster
        loader's (a Pod's ServiceAccount token, which it re-reads as the kubelet rotates it) under "BearerToken"."""
        for key in ("authorization", "BearerToken"):
            value = str(self.configuration.api_key.get(key, ""))
            if value.startswith("Bearer "):
                return value.removeprefix("Bearer ")
        return None

    def connection_info(self) -> kopf.ConnectionInfo:
        c = self.configuration
        token = self.token
        return kopf.ConnectionInfo(
            server=str(c.host),
            ca_path=c.ssl_ca_cert,
            insecure=not c.verify_ssl,
            certificate_path=c.cert_file,
            private_key_path=c.key_file,
            token=token,
        )

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    async def merge_patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any], *, status: bool = False
    ) -> Any:
        """One JSON merge PATCH of an aifirst.dev object (of its /status subresource with STATUS)."""
        method = (
            self.custom.patch_namespaced_custom_object_status if status else self.custom.patch_namespaced_custom_object
        )
        return await method(
            API_GROUP,
            API_VERSION,
            namespace,
            plural,
            name,
            patch,
            _content_type="application/merge-patch+json",  # type: ignore[call-arg]  # not in its stubs
        )

    async def patch_workflow_status(self, namespace: str, name: str, patch: dict[str, Any]) -> Any:
        """The only way the operator writes a workflow's status."""
        return await self.merge_patch("workflows", namespace, name, patch, status=True)

    async def patch_workflow(self, namespace: str, name: str, patch: dict[str, Any]) -> Any:
        return await self.merge_patch("workflows", namespace, name, patch)

    def gateway(self) -> KubeGateway:
        """The same credentials for the k8s.* capabilities, which act as each workflow's principal."""
        c = self.configuration
        context = ssl.create_default_context(cafile=c.ssl_ca_cert) if c.ssl_ca_cert else ssl.create_default_context()
        if not c.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if c.cert_file and c.key_file:
            context.load_cert_chain(c.cert_file, c.key_file)
        return KubeGateway(str(c.host), context, self.token)

    async def close(self) -> None:
        await self.api.close()


async def connect(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    """In-cluster credentials when running in a Pod without KUBECONFIG; the kubeconfig otherwise."""
    configuration = client.Configuration()
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration)
    else:
        await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    return Connection(client.ApiClient(configuration), configuration)
