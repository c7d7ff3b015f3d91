"""File Conveyor: keeps CDNs, object stores and servers in sync with local directory trees."""

__version__ = "1.0.0.dev0"
