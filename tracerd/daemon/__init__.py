"""The daemon: main, the socket server, authorization, the request handler, the sessions."""
