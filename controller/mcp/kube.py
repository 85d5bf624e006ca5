"""Whose identity the MCP server uses: always the caller's, never its own.

- stdio: the server is the caller's own process, started by the caller's MCP client, so the kubeconfig
  (and context) it runs with is the caller's identity.
- streamable HTTP: every request carries `Authorization: Bearer <Kubernetes token>`; the server talks to
  the API server with that token (pass-through) and only takes the cluster's address and CA from its own
  configuration. Its own credentials are never loaded into a client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import config as sync_config
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from mcp.server.auth.provider import AccessToken

from controller.client.workflows import reason_of


class IdentityError(Exception):
    """The caller's identity cannot be used (no kubeconfig, no token)."""


class Identity(Protocol):
    def client(self, request: Any) -> AbstractAsyncContextManager[client.ApiClient]:
        """An API client acting as the caller of REQUEST (the HTTP request; None on stdio)."""
        ...


def _in_cluster(kubeconfig: str | None) -> bool:
    """No kubeconfig to read, in a Pod: the cluster is the one the Pod runs in."""
    path = os.path.expanduser(kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config")
    found = os.path.exists(path.split(os.pathsep)[0])
    if not found and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    if not found:
        raise IdentityError(f"no kubeconfig at {path} (--kubeconfig or KUBECONFIG)")
    return False


async def _cluster(kubeconfig: str | None, context: str | None) -> client.Configuration:
    """The configuration of KUBECONFIG/CONTEXT, or the in-cluster one when there is no kubeconfig."""
    configuration = client.Configuration()
    if _in_cluster(kubeconfig):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration
    try:
        await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (config.ConfigException, OSError) as error:
        raise IdentityError(f"no usable kubeconfig: {error}") from error
    return configuration


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig context (default: `default`)."""
    try:
        contexts, active = sync_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (sync_config.ConfigException, OSError):
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), None) if context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


@dataclass
class KubeconfigIdentity:
    """stdio: the identity of the kubeconfig context the server runs with, which is the caller's."""

    api: client.ApiClient

    @classmethod
    async def load(cls, kubeconfig: str | None, context: str | None) -> KubeconfigIdentity:
        return cls(client.ApiClient(await _cluster(kubeconfig, context)))

    @asynccontextmanager
    async def client(self, request: Any) -> AsyncIterator[client.ApiClient]:
        yield self.api

    async def close(self) -> None:
        await self.api.close()


def bearer_token(request: Any) -> str | None:
    header = request.headers.get("authorization", "") if request is not None else ""
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass
class BearerTokenIdentity:
    """Streamable HTTP: the caller's token, passed through to the API server, which authenticates it."""

    cluster: client.Configuration  # where the API server is and its CA; no credentials

    @classmethod
    async def load(cls, kubeconfig: str | None, context: str | None) -> BearerTokenIdentity:
        own = await _cluster(kubeconfig, context)
        cluster = client.Configuration(host=own.host)
        # Only the address and how to trust it: the server's own client certificate or token stay unused.
        cluster.ssl_ca_cert, cluster.verify_ssl, cluster.tls_server_name = (
            own.ssl_ca_cert,
            own.verify_ssl,
            own.tls_server_name,
        )
        cluster.proxy = own.proxy
        return cls(cluster)

    @property
    def server(self) -> str:
        return str(self.cluster.host)

    def _configuration(self, token: str) -> client.Configuration:
        # kubernetes_asyncio sends api_key["BearerToken"] as the Authorization header.
        configuration = client.Configuration(host=self.cluster.host, api_key={"BearerToken": f"Bearer {token}"})
        configuration.ssl_ca_cert, configuration.verify_ssl, configuration.tls_server_name = (
            self.cluster.ssl_ca_cert,
            self.cluster.verify_ssl,
            self.cluster.tls_server_name,
        )
        configuration.proxy = self.cluster.proxy
        return configuration

    @asynccontextmanager
    async def client(self, request: Any) -> AsyncIterator[client.ApiClient]:
        token = bearer_token(request)
        if token is None:  # the authentication middleware refuses such requests before they get here
            raise IdentityError("no bearer token in the request")
        async with client.ApiClient(self._configuration(token)) as api:
            yield api

    async def verify_token(self, token: str) -> AccessToken | None:
        """The SDK's TokenVerifier: the API server says whose token it is (a SelfSubjectReview made with
        the token itself); a token it does not accept makes the request a 401."""
        async with client.ApiClient(self._configuration(token)) as api:
            try:
                review = await client.AuthenticationV1Api(api).create_self_subject_review(
                    client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
                )
            except ApiException as error:
                if error.status in (401, 403):  # 403: not even allowed to ask who it is (system:basic-user is)
                    return None
                raise IdentityError(f"cannot check the token with the API server: {reason_of(error)}") from error
        user = review.status.user_info
        return AccessToken(token=token, client_id=user.username, subject=user.username, scopes=[])
