"""stemforge-cpi: a BOSH external CPI.

The package is layered like bosh-cpi-go: ``main`` reads one request and writes one response, ``dispatcher`` turns a
validated request into a call on a provider (``provider`` holds the interfaces), and each provider under
``cpi.providers`` knows its IaaS and nothing of JSON-RPC. This module must stay import-light: ``info`` runs on every
director cloud lookup.
"""
