# $MLOPS_HOME/serving/stack.json -> Prometheus file_sd targets: the gateway and each engine
# the local supervisor runs, labelled with their role and engine name.
def hostport: sub("^https?://"; "") | sub("/.*$"; "");
[ (.gateway // empty | select(.url) | {targets: [.url | hostport], labels: {component: "gateway"}}) ]
+ [ (.engines // {}) | to_entries[] | select(.value.url)
    | {targets: [.value.url | hostport], labels: {component: "engine", engine: .key}} ]
