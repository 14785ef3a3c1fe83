"""The Elasticsearch API: osmem from the osmem-server wheel (in memory), or an external cluster."""

from __future__ import annotations

from tributary.settings import Endpoint
from tributary.stack.component import ProcessComponent
from tributary.stack.errors import BinaryMissingError, StackError
from tributary.stack.health import es_probe


class OsmemSearch(ProcessComponent):
    """`osmem-server` listening on `settings.es_endpoint` (loopback only).

    osmem keeps every index in memory: documents are gone once it stops.
    """

    name = "elasticsearch"
    package = "osmem-server"

    @property
    def embedded(self) -> bool:
        return self.settings.embedded_es

    @property
    def listen(self) -> Endpoint:
        endpoint = self.settings.es_endpoint
        if self.embedded and not endpoint.is_loopback:
            # osmem has no authentication: binding it beyond loopback would expose every index.
            raise StackError(
                f"elasticsearch: the embedded ES-API server only listens on loopback, not "
                f"{endpoint.host}; set {endpoint.setting} to http://127.0.0.1:{endpoint.port}, or "
                "set TRIBUTARY_EMBEDDED_ES=0 to use an external Elasticsearch"
            )
        return endpoint

    @property
    def endpoint_text(self) -> str:
        return self.settings.es_url

    def command(self) -> list[str]:
        try:
            import osmem_server
        except ImportError as exc:
            raise BinaryMissingError(
                "elasticsearch: the osmem ES-API server is missing: `pip install osmem-server`, "
                "or set TRIBUTARY_EMBEDDED_ES=0 and point TRIBUTARY_ES_URL at an Elasticsearch"
            ) from exc
        try:
            binary = osmem_server.resolve_binary()
        except osmem_server.OsmemError as exc:
            raise BinaryMissingError(f"elasticsearch: {exc} (pip package osmem-server)") from exc
        # -no-stdin-watch: osmem otherwise exits when its stdin closes, i.e. right away when
        # detached from a terminal.
        return [binary, "-addr", f"{self.listen.host}:{self.listen.port}", "-no-stdin-watch"]

    def probe(self) -> None:
        es_probe(self.settings)

    def external_hint(self) -> str:
        return (
            "Check TRIBUTARY_ES_URL (and TRIBUTARY_ES_USERNAME/PASSWORD), or set "
            "TRIBUTARY_EMBEDDED_ES=1 to run the embedded server"
        )
