"""DICOMweb (PS3.18) under /dicom-web, one module per service as in Orthanc's DICOMweb plugin:
``qido`` (QIDO-RS), ``wado`` (WADO-RS), ``rendered``, ``stow`` (STOW-RS), and ``wado_uri``
(WADO-URI at /wado); ``formatter`` writes DICOM JSON and multipart answers for all of them,
``negotiation`` reads Accept, ``resolve`` turns the UIDs of a URL into instances.
"""

from __future__ import annotations

from aiohttp import web

from . import qido, rendered, stow, wado, wado_uri

__all__ = ["routes"]

# In the order they were always registered: the same table as one module made.
routes: list[web.RouteDef] = [*qido.routes, *wado.routes, *rendered.routes, *stow.routes, *wado_uri.routes]
