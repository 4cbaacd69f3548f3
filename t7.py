import polars as pl, llmframe
from llmframe import Endpoint
df = pl.DataFrame({"p": ["a"]})
C="/tmp/outside12"
def run(label, ep, **kw):
    try:
        out = df.llm.complete("p", endpoints=[ep], max_attempts=1, progress=False, timeout=4, **kw)
        r = out.row(0, named=True); print(label, "|", r.get("error_type"), "|", r.get("response") or (r.get("error") or "")[:260])
    except Exception as e:
        print(label, "EXC", type(e).__name__, str(e)[:300])
for tr in ["fast","aiohttp"]:
    for name, px in [("garbage","http://127.0.0.1:29004"),("close","http://127.0.0.1:29005"),("midclose","http://127.0.0.1:29006"),("cut","http://127.0.0.1:29009"),("407nocreds","http://127.0.0.1:29202"),("407badcreds","http://alice:bad@127.0.0.1:29202"),("down","http://127.0.0.1:29999")]:
        run(f"{tr:7} https {name:11}", Endpoint("https://127.0.0.1:28443/v1", proxy=px, ca_bundle=C+"/ca.pem"), transport=tr)
        run(f"{tr:7} http  {name:11}", Endpoint("http://127.0.0.1:28001/v1", proxy=px), transport=tr)
