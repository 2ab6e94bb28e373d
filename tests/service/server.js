// The "non-Python service" the tests register and check: Node.js 20, no npm packages.
//
//   node server.js [PORT] [ignored...]     (or PORT=... HOST=... node server.js)
//
// Prints "LISTENING <port>" on stdout once it accepts connections; PORT 0 (the default)
// takes any free port. Extra arguments are ignored: tests pass a unique marker there to
// find this very process by its command line. Exits 0 on SIGTERM or SIGINT.
"use strict";

const http = require("node:http");

const HOST = process.env.HOST || "127.0.0.1";
const PORT = Number(process.argv[2] ?? process.env.PORT ?? 0);
const BIG_BYTES = 1024 * 1024;
const BIG_CHUNK = 64 * 1024;
const CONTROL_MAX_BYTES = 16 * 1024 * 1024;

const DEFAULT_OPENAPI = {
  openapi: "3.0.3",
  info: { title: "node-test-service", version: "1.0.0" },
  paths: {
    "/healthz": {
      get: {
        summary: "Liveness",
        responses: { 200: { description: "healthy" } },
      },
    },
  },
};

// DEFAULT_OPENAPI written by hand as YAML: the tests check that both parse to one document.
const DEFAULT_OPENAPI_YAML = `openapi: 3.0.3
info:
  title: node-test-service
  version: 1.0.0
paths:
  /healthz:
    get:
      summary: Liveness
      responses:
        '200':
          description: healthy
`;

// What the tests can switch at run time.
const state = {
  health: { status: 200, body: "ok", delay_ms: 0 },
  // The document as served: JSON text, or any bytes with their content type.
  openapi: { body: JSON.stringify(DEFAULT_OPENAPI), type: "application/json" },
  openapiYaml: { body: DEFAULT_OPENAPI_YAML, type: "application/yaml" },
};
const counts = {};

function send(res, status, body, type = "text/plain; charset=utf-8") {
  res.writeHead(status, { "Content-Type": type, "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

function sendJson(res, status, value) {
  send(res, status, JSON.stringify(value), "application/json");
}

function readBody(req, callback) {
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size <= CONTROL_MAX_BYTES) chunks.push(chunk);
  });
  req.on("end", () => callback(Buffer.concat(chunks).toString("utf8"), size));
}

function parseJson(text) {
  try {
    return { value: JSON.parse(text) };
  } catch (err) {
    return { error: err.message };
  }
}

// POST /control/health {"status": 503, "body": "...", "delay_ms": 0}: fields left out keep
// their value.
function controlHealth(req, res) {
  readBody(req, (text) => {
    const parsed = parseJson(text);
    if (parsed.error || typeof parsed.value !== "object" || parsed.value === null) {
      return sendJson(res, 400, { error: parsed.error || "expected a JSON object" });
    }
    Object.assign(state.health, parsed.value);
    sendJson(res, 200, state.health);
  });
}

// POST /control/openapi: the JSON body becomes the document (served as JSON, and as its
// JSON text under /openapi.yaml, since JSON is YAML). POST /control/openapi?raw=1: the body
// is served verbatim at both paths with the request's content type, so tests can serve
// YAML, HTML, broken JSON or nothing.
function controlOpenapi(req, res, query) {
  readBody(req, (text) => {
    if (query.has("raw")) {
      const type = req.headers["content-type"] || "application/octet-stream";
      state.openapi = state.openapiYaml = { body: text, type };
    } else {
      const parsed = parseJson(text);
      if (parsed.error) return sendJson(res, 400, { error: parsed.error });
      state.openapi = { body: text, type: "application/json" };
      state.openapiYaml = { body: text, type: "application/yaml" };
    }
    sendJson(res, 200, { bytes: Buffer.byteLength(text) });
  });
}

function healthz(res) {
  const { status, body, delay_ms: delay } = state.health;
  setTimeout(() => send(res, Number(status), String(body ?? "")), Number(delay) || 0);
}

// 1 MiB with no Content-Length (chunked), written as the client reads it.
function big(res) {
  res.writeHead(200, { "Content-Type": "text/plain" });
  const chunk = Buffer.alloc(BIG_CHUNK, "x");
  let sent = 0;
  const write = () => {
    while (sent < BIG_BYTES) {
      sent += chunk.length;
      if (!res.write(chunk)) return res.once("drain", write);
    }
    res.end();
  };
  write();
}

const routes = {
  "GET /healthz": (req, res) => healthz(res),
  "GET /openapi.json": (req, res) => send(res, 200, state.openapi.body, state.openapi.type),
  "GET /openapi.yaml": (req, res) =>
    send(res, 200, state.openapiYaml.body, state.openapiYaml.type),
  "GET /redirect": (req, res) => {
    res.writeHead(302, { Location: "/healthz", "Content-Length": 0 });
    res.end();
  },
  "GET /big": (req, res) => big(res),
  "GET /hang": () => {}, // never answers; the client gives up
  "POST /control/health": controlHealth,
  "POST /control/openapi": controlOpenapi,
  "GET /control/stats": (req, res) => sendJson(res, 200, counts),
};

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://service");
  const path = url.pathname;
  counts[path] = (counts[path] || 0) + 1;
  // A client that hangs up mid-body (a capped read) is expected, not an error.
  res.on("error", () => {});
  const route = routes[`${req.method} ${path}`];
  if (route) return route(req, res, url.searchParams);
  // Any /ok/... answers 200: many health checks, each counted at its own path.
  if (req.method === "GET" && path.startsWith("/ok/")) return sendJson(res, 200, { ok: path });
  sendJson(res, 404, { error: `no route ${req.method} ${path}` });
});

server.listen(PORT, HOST, () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  // Exit at once: open requests (/hang) must not hold the process up.
  process.on(signal, () => process.exit(0));
}
