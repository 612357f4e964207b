"""Upstream model servers: one seam, three clients, and the pool that owns them.

- ``base``: the ``Upstream`` and ``Stream`` Protocols every client implements, and ``Reply``.
- ``httptools_client``: the default client for OpenAI-compatible servers: keep-alive HTTP/1.1
  on asyncio, parsed by httptools (a fraction of aiohttp's CPU per call, docs/benchmarks.md).
- ``aiohttp_client``, ``httpx_client``: the same over aiohttp or httpx
  (``EFFGATE_HTTP_CLIENT=aiohttp|httpx``; httpx is the one that honours HTTP(S)_PROXY).
- ``litellm_client``: providers that do not speak OpenAI's API, through litellm (imported only
  when a policy names one).
- ``pool``: the clients of the live policy, built by provider, reused across reloads.

Each client maps its library's exceptions to ``gateway.errors.UpstreamError`` leaves in one
``map_*_errors`` seam; nothing else catches them.
"""
