"""A webhook receiver for the tests: verifies every request with the standardwebhooks
package (PyPI), not with mailspool's code; answers 500 to every FAIL_EVERY-th request;
appends each verified event to OUT (one JSON object per line) before it answers 204.

usage: webhook_receiver.py PORT SECRET OUT FAIL_EVERY   (PORT 0: any; the port is printed)
"""
import http.server
import json
import sys

from standardwebhooks.webhooks import Webhook

port, secret, out, fail_every = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
hook = Webhook(secret)
seen = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        seen += 1
        if fail_every and seen % fail_every == 0:
            self.send_response(500)
            self.end_headers()
            return
        try:
            payload = hook.verify(body, dict(self.headers))
        except Exception as e:  # the test counts these: there must be none
            with open(out + ".bad", "a") as f:
                f.write(f"{e}\n")
            self.send_response(400)
            self.end_headers()
            return
        if payload["type"] == "message.batch":
            events = payload["data"]["events"]
        else:
            events = [payload["data"]]
        with open(out, "a") as f:
            for e in events:
                f.write(json.dumps({"webhook_id": self.headers["webhook-id"], **e}) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class Server(http.server.HTTPServer):
    allow_reuse_address = True


server = Server(("127.0.0.1", port), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
