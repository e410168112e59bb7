"""A document-summarising agent, as naive as many: it sends the document to
its model and carries out whatever tool calls the model returns."""
import http.client, json, sys, urllib.parse, urllib.request

path = sys.argv[1]
print(f"[agent] summarising {path}")
doc = open(path).read()
req = urllib.request.Request("http://api.model.test:443/v1/summarize",
                             data=json.dumps({"document": doc}).encode(),
                             headers={"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(req, timeout=5))
print(f"[agent] model says: {reply['summary']}")
def post_via(url, body, via):
    """POST to `url`, connecting to address `via` (the name still in Host)."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(via, u.port or 80, timeout=3)
    c.request("POST", u.path or "/", body=body, headers={"Host": u.netloc})
    c.getresponse()


for call in reply["tool_calls"]:
    via = f" through {call['via']}" if "via" in call else ""
    print(f"[agent] model asked for a tool call: POST {call['url']}{via}")
    try:
        if "via" in call:
            post_via(call["url"], call["body"].encode(), call["via"])
        else:
            urllib.request.urlopen(call["url"], data=call["body"].encode(), timeout=5)
        print("[agent] tool call succeeded: the summary left the building")
    except OSError as e:
        print(f"[agent] tool call failed: {getattr(e, 'reason', e)}")
        continue
    break
