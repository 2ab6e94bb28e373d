// The npm `consul` client (package.json pins it) as tests/test_consumer_consul.py drives
// it: calls made exactly as an application makes them, their results printed as JSON.
//
//   node client.js '{"host": "127.0.0.1", "port": 9500, "token": "...",
//                    "steps": [{"call": "health.service", "opts": {"service": "web"}}]}'
//   node client.js '{"host": ..., "port": ..., "watch": {"call": "health.service",
//                    "opts": {"service": "web", "wait": "2s"}}}'
//
// Steps run in order; each prints {"started": call} before it is sent, then one line:
// {"call", "ok": body, "index": X-Consul-Index, "ms"} or {"call", "error": {"message",
// "statusCode", "body"}}. A watch (consul.watch, the client's own blocking-query loop)
// prints {"change": body, "index"} at each change and {"error"} at each error, until it is
// killed. Exits 0 when the steps are done, whatever they answered.
"use strict";

const events = require("node:events");
const Consul = require("consul");

const spec = JSON.parse(process.argv[2]);
const consul = new Consul({
  host: spec.host,
  port: spec.port,
  ...(spec.token ? { defaults: { token: spec.token } } : {}),
});

function print(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

// "health.service" -> consul.health.service, called on its own object.
function method(call) {
  const path = call.split(".");
  const owner = path.slice(0, -1).reduce((obj, key) => obj[key], consul);
  const fn = owner[path[path.length - 1]];
  if (typeof fn !== "function") throw new Error(`no method consul.${call}`);
  return fn.bind(owner);
}

function describe(err) {
  const response = err.response || {};
  return {
    message: err.message,
    statusCode: err.statusCode ?? response.statusCode ?? null,
    body: response.body === undefined ? null : response.body,
  };
}

async function runSteps(steps) {
  for (const step of steps) {
    print({ started: step.call });
    // A context asking for the response too: its X-Consul-Index is the blocking index.
    const ctx = new events.EventEmitter();
    ctx.includeResponse = true;
    const started = Date.now();
    try {
      const answer = await method(step.call)({ ...(step.opts || {}), ctx });
      const [res, body] = Array.isArray(answer) ? answer : [undefined, answer];
      print({
        call: step.call,
        ok: body === undefined ? null : body,
        index: res && res.headers ? res.headers["x-consul-index"] ?? null : null,
        ms: Date.now() - started,
      });
    } catch (err) {
      print({ call: step.call, error: describe(err), ms: Date.now() - started });
    }
  }
  consul.destroy();
}

function runWatch(watch) {
  const watcher = consul.watch({ method: method(watch.call), options: watch.opts || {} });
  watcher.on("change", (body, res) =>
    print({ change: body, index: res.headers["x-consul-index"] }),
  );
  watcher.on("error", (err) => print({ error: describe(err) }));
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
      watcher.end();
      consul.destroy();
      process.exit(0);
    });
  }
}

if (spec.watch) {
  runWatch(spec.watch);
} else {
  runSteps(spec.steps || []).catch((err) => {
    print({ fatal: String(err && err.stack ? err.stack : err) });
    process.exit(1);
  });
}
