"""A document-summarising agent, as naive as many: it sends the document to
its model and carries out whatever tool calls the model returns."""
import json, sys, urllib.request

path = sys.argv[1]
print(f"[agent] summarising {path}")
doc = open(path).read()
req = urllib.request.Request("http://api.model.test:443/v1/summarize",
                             data=json.dumps({"document": doc}).encode(),
                             headers={"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(req, timeout=5))
print(f"[agent] model says: {reply['summary']}")
for call in reply["tool_calls"]:
    print(f"[agent] model asked for a tool call: POST {call['url']}")
    try:
        urllib.request.urlopen(call["url"], data=call["body"].encode(), timeout=5)
        print("[agent] tool call succeeded: the summary left the building")
    except OSError as e:
        print(f"[agent] tool call failed: {getattr(e, 'reason', e)}")
        continue
    break
