#!/bin/sh
# The quickest upstream to start (a shell, no interpreter to load), for tests that open and close a thousand
# sessions: it answers `initialize` and `ping`, ignores everything else, and exits when its stdin closes.
# guard writes compact JSON (`{"jsonrpc":"2.0","id":N,"method":...`), so the id is what follows `"id":`.
while IFS= read -r line; do
    id=${line#*\"id\":}
    id=${id%%,*}
    case "$line" in
    *'"method":"initialize"'*)
        printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"quick","version":"1"}}}\n' "$id"
        ;;
    *'"method":"ping"'*)
        printf '{"jsonrpc":"2.0","id":%s,"result":{}}\n' "$id"
        ;;
    esac
done
