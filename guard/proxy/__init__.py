"""The MCP wire between a client and the upstream: the only part that knows the MCP SDK's transports.
It knows no policy, payments or ledger: it calls the `guard.core.Gate` for every tools/call and tools/list.

relay.py      `Relay`: every message both ways, guard's own request ids upstream, deadlines, the Gate's hooks
wire.py       a client's bytes read and checked before anything acts on them (ids, sizes, JSON)
stdio.py      serving one client on guard's own stdin/stdout
http.py       serving clients over streamable HTTP: tokens, every request check and limit, both eras
upstream.py   starting or reaching the upstream (a stdio process, an HTTP URL); why it went away
limits.py     `Limits`: every bound the fronts and the relay enforce, from `guard run` flags
"""
