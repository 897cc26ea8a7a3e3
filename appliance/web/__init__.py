"""The web layer: REST (Orthanc-compatible), DICOMweb (``dicomweb/``, one module per service) and
pages; errors answered in one place (``errors``); ``app`` builds the server. Calls the archive only."""
