// A service's page. The master renders its sections (master/dashboard/render.py): first
// with the page, then again whenever this script asks, as a blocking request that the
// master answers when a record of this service's name changes (or after a while, for a
// fresh last check). Sections whose key is unchanged are left alone, so what the reader
// has focused or opened there stays; the others are swapped in whole.
"use strict";

const ident = document.body.dataset.id;
const FRAGMENT = `dashboard/services/${encodeURIComponent(ident)}?fragment=1`;

// The master rendered this HTML, escaping every piece of service data in it: the same
// trust as the page itself. The Content-Security-Policy lets this policy alone make HTML.
const policy = window.trustedTypes
  ? window.trustedTypes.createPolicy("picoapi-fragment", { createHTML: (html) => html })
  : { createHTML: (html) => html };

const page = { generation: 0 };

async function follow(generation) {
  let index = null;
  let retry = RETRY_MIN_MS;
  while (generation === page.generation) {
    try {
      const query = index === null ? "" : `&index=${index}`;
      const body = await getJSON(FRAGMENT + query);
      if (generation !== page.generation) return;
      apply(body);
      index = body.index;
      retry = RETRY_MIN_MS;
      setConnection("live", body.found ? `live · index ${index}` : "live · not registered");
    } catch (error) {
      if (generation !== page.generation) return;
      if (error instanceof Unauthorized) {
        askForToken();
        return;
      }
      setConnection("down", "disconnected, retrying…");
      await backOff(retry);
      retry = retryDelay(retry);
    }
  }
}

function apply(body) {
  document.title = `${body.title} · picoapi registry`;
  const container = $("page");
  const wanted = Object.keys(body.sections);
  const sections = wanted.map((name) => {
    let section = $(`section-${name}`);
    if (!section) {
      section = el("section", "panel");
      section.id = `section-${name}`;
      section.dataset.section = name;
    }
    if (section.dataset.key !== body.keys[name]) {
      section.innerHTML = policy.createHTML(body.sections[name]);
      section.dataset.key = body.keys[name];
      tick(section);
    }
    return section;
  });
  sections.forEach((section, i) => {
    if (container.children[i] !== section) container.insertBefore(section, container.children[i] || null);
  });
  while (container.children.length > sections.length) container.lastElementChild.remove();
}

function restart() {
  page.generation += 1;
  follow(page.generation);
}

shared.onToken = restart;
startClock();
restart();
