"""Writeback's side of Microsoft Entra ID administration: the app registrations the API, the
self-service pages and the admin command line need (`manifest`, `registration`), and the links
in Microsoft's sign-in screens that lead users to the pages (`doors`), both set through
Microsoft Graph (`graph`).

Used by the `writeback entra` commands, never by the Function or the relay: nothing here runs
in Azure. It never prints or logs a token, and every Graph call names the permission and the
directory role it needs when Entra ID refuses it.
"""
