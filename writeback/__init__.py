"""Writeback: password writeback from Microsoft Entra ID to on-premises Active Directory."""

__version__ = "0.1.0"
