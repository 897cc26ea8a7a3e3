"""pipacs: a DICOM teaching-file appliance for Raspberry Pi-class boards."""

__version__ = "0.1.0"
