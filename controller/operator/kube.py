"""The operator's connection to the API server: one set of credentials for kopf's watches and for the
operator's own status PATCHes (kubernetes_asyncio)."""

from __future__ import annotations

import inspect
import ssl
from asyncio import sslproto
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes_asyncio import client, config

from controller import API_GROUP, API_VERSION
from controller.capabilities.handlers.k8s import KubeGateway


@dataclass
class Connection:
    api: client.ApiClient
    configuration: client.Configuration
    # The field manager of the operator's writes to its objects: each replica's identity when there are
    # several (kubectl get --show-managed-fields then says which replica wrote a status last).
    field_manager: str | None = None
    others: list[client.ApiClient] = field(default_factory=list)  # separate pools (separate_pool), closed too

    def separate_pool(self) -> client.ApiClient:
        """A client with connections of its own, for requests that must not queue behind the workflows'
        (the shard Leases' renewals: a renewal that waits too long fences the replica)."""
        api = client.ApiClient(self.configuration)
        self.others.append(api)
        return api

    async def bearer_token(self) -> str | None:
        """The current bearer token, if the credentials are a token: in a Pod the projected ServiceAccount
        token, which kubelet rotates (the loader's refresh hook re-reads it when it is due)."""
        c = self.configuration
        refresh: Any = c.refresh_api_key_hook  # typed as a coroutine in the stubs; the in-cluster one is a function
        if refresh is not None:
            refreshed = refresh(c)
            if inspect.isawaitable(refreshed):
                await refreshed
        value = str(c.api_key.get("BearerToken") or "")  # where kubernetes_asyncio's loaders put it
        return value.removeprefix("Bearer ") or None

    async def connection_info(self) -> kopf.ConnectionInfo:
        """For kopf, which asks again (login handler) whenever the API server answers 401."""
        c = self.configuration
        token = await self.bearer_token()
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
        manager: dict[str, Any] = {"field_manager": self.field_manager} if self.field_manager else {}
        return await method(
            API_GROUP,
            API_VERSION,
            namespace,
            plural,
            name,
            patch,
            _content_type="application/merge-patch+json",  # type: ignore[call-arg]  # not in its stubs
            **manager,
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
        return KubeGateway(str(c.host), context, self.bearer_token)

    async def close(self) -> None:
        for api in [self.api, *self.others]:
            await api.close()


# At most this many requests at once on one client's pool (kubernetes_asyncio's default is 100): each
# connection stays open, with its buffers, long after a burst (1,000 workflows created at once opened 34).
# Requests beyond these wait for a free connection. Two are held by the operator's own watches (finished
# workflows, credentials); one replica's status writes, about 10 ms each at most 80 steps/s, keep a few
# of the rest busy.
POOL_CONNECTIONS = 16
# asyncio gives every TLS connection a read buffer of SSLProtocol.max_size (256 KiB), zero-filled when the
# connection opens, so resident for as long as it stays open: the operator keeps about 30 (kopf's watches,
# its Event posts, this client's pool, the webhook server's clients), 7.5 MiB. A TLS record is at most
# 16 KiB, so reading 64 KiB at a time loses nothing but a few loop turns on a large LIST.
TLS_READ_BUFFER = 64 * 1024


def smaller_tls_read_buffers() -> None:
    """For the connections opened from now on, in this process (SSLProtocol has no per-connection knob)."""
    sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


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
    configuration.connection_pool_maxsize = POOL_CONNECTIONS
    return Connection(client.ApiClient(configuration), configuration)
