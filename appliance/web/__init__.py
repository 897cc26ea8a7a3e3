"""The web layer: REST (Orthanc-compatible), and later DICOMweb and pages. Calls the archive only."""
