"""`ptune serve`: one frozen base model, many P-Tuning v2 prefixes, an OpenAI-compatible HTTP API and a chat page.

- batch.py      the batched key/value cache as pure tensor functions: rows with different prefixes (or none)
                left-padded into one cache, rows joining and leaving, the attention mask
- engine.py     the model side: each prefix's keys/values computed once; prefill and one decode step
- scheduler.py  continuous batching: a bounded queue, rows admitted at every step, finished rows leave at once;
                answers streamed as text by `ptune.infer.text_stream` (as `ptune chat` streams them)
- protocol.py   the OpenAI request/response shapes, checked; error bodies
- app.py        the FastAPI app (routes, API key, server-sent events, the page)
- cli.py        `ptune serve ...`: loading, uvicorn, SIGTERM
(`ptune bench --serve`, concurrent streaming clients against a live server: ptune/bench/serve.py.)
"""
