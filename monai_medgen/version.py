"""The package version (a leaf module: ``setup.cfg`` reads it, and provenance records it without importing the
package's ``__init__``)."""

__version__ = "0.1.0"
