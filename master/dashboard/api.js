// A service's API docs, rendered by the master's own copy of Swagger UI
// (vendor/swagger-ui/, pinned; no CDN). The document is read from the master
// (v1/services/{id}/openapi, with the read token if one is needed) and handed to Swagger
// UI as data: Swagger UI is told no URL, and reads none from this page's query string.
// "Try it out" is off: it would send requests from the reader's browser to the service
// (or, for a document without `servers`, to the master itself); the docs are for reading.
"use strict";

const ident = document.body.dataset.id;
const docs = { generation: 0 };

async function load(generation) {
  const id = encodeURIComponent(ident);
  try {
    if (!$("api-head").querySelector("h1")) renderHead(await getJSON(`v1/services/${id}`));
    const spec = await getJSON(`v1/services/${id}/openapi`);
    if (generation !== docs.generation) return;
    $("api-loading")?.remove();
    window.ui = SwaggerUIBundle({
      spec,
      domNode: $("api-docs"),
      presets: [SwaggerUIBundle.presets.apis],
      plugins: [],
      layout: "BaseLayout",
      deepLinking: true,
      queryConfigEnabled: false,
      validatorUrl: null,
      supportedSubmitMethods: [],
      tryItOutEnabled: false,
      docExpansion: "list",
      defaultModelsExpandDepth: 0,
    });
    setConnection("live", "API document loaded");
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForToken();
      return;
    }
    const text = error instanceof NotFound ? "No OpenAPI document for this service." : String(error);
    $("api-docs").replaceChildren(el("p", "muted", text));
    setConnection("down", error instanceof NotFound ? "no document" : "could not load the document");
  }
}

// Where the master could not paint it (reads need a token): the same head, from the record.
function renderHead(record) {
  const title = el("h1");
  title.append(el("span", "name", record.name), " ", el("code", "id", record.id));
  const raw = el("a", "raw", "raw document (JSON)");
  raw.id = "raw-link";
  raw.href = `${shared.root}v1/services/${encodeURIComponent(record.id)}/openapi`;
  const links = el("p");
  links.append(raw);
  $("api-head").replaceChildren(title, links);
  document.title = `API of ${record.name} · picoapi registry`;
}

function restart() {
  docs.generation += 1;
  load(docs.generation);
}

shared.onToken = restart;
restart();
