"""The pure core: Matrix logic with no trio, no sockets and no SQL.

Everything here takes parsed data and returns decisions (rows to write,
requests to send, delays to wait), so it is tested without any I/O.
"""
