#!/usr/bin/env python3
"""A loopback HTTP store for the benches: Python's http.server, sending files with sendfile(2).

Usage: sendfile-http-server.py PORT DIRECTORY

http.server copies every byte through Python (read, then write, 64 KiB at a time): serving a 1.8 GB
bundle took 0.7 s of CPU, on the same two cores as the restore it serves. Servers a store would
really be behind (nginx's `sendfile on`, Debian's default) hand the file to the kernel instead;
this one does too (0.2 s), so the bench charges a restore less for its neighbour.
"""
import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, source, outputfile):
        # The headers are already sent (wbufsize 0): the body goes straight to the socket.
        self.connection.sendfile(source)

    def log_message(self, format, *args):
        pass


port, directory = int(sys.argv[1]), sys.argv[2]
http.server.ThreadingHTTPServer(
    ("127.0.0.1", port), functools.partial(Handler, directory=directory)
).serve_forever()
