// Node-RED settings for the sluice end-to-end benchmark (sluice-bench).
//
// A headless runtime: no editor, no admin API, no HTTP-in nodes; the flow in
// flow.json (copied into a fresh user directory per run by the bench) is the
// whole program. Ports and paths come from the environment, which the flow
// reads with ${VAR} substitution:
//   NODE_RED_PORT  the runtime's HTTP port (unused, but Node-RED always listens)
//   SERIAL_PORT    the pseudo-terminal the generator writes to
//   MQTT_PORT      the broker's port on 127.0.0.1
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: Number(process.env.NODE_RED_PORT || 1880),
    httpAdminRoot: false,
    httpNodeRoot: false,
    flowFile: "flow.json",
    credentialSecret: false,
    // A serial port that fails to open is retried after this long.
    serialReconnectTime: 1000,
    // flow-influx.json stamps points in nanoseconds: the function sandbox has
    // no `process`, so hand it the clock.
    functionGlobalContext: { hrtime: process.hrtime },
    logging: {
        console: { level: "warn", metrics: false, audit: false },
    },
    editorTheme: { tours: false },
    diagnostics: { enabled: false },
    telemetry: { enabled: false },
};
