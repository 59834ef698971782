// Minimal offline API reference: renders /openapi.json with textContent only.
"use strict";

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

document.addEventListener("DOMContentLoaded", async () => {
  const main = document.getElementById("endpoints");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    main.replaceChildren(el("p", "muted", spec.info && spec.info.description ? spec.info.description : ""));
    for (const [path, ops] of Object.entries(spec.paths || {})) {
      for (const [method, op] of Object.entries(ops)) {
        const section = el("section", "endpoint");
        section.append(el("h2", null, `${method.toUpperCase()} ${path}`));
        if (op.summary) section.append(el("p", null, op.summary));
        const params = op.parameters || [];
        if (params.length) {
          const list = el("ul");
          for (const p of params) {
            const s = p.schema || {};
            const limits = ["minimum", "maximum", "minLength", "maxLength", "default"]
              .filter((key) => s[key] !== undefined).map((key) => `${key} ${s[key]}`).join(", ");
            list.append(el("li", null, `${p.name} (${p.in}${p.required ? ", required" : ""}, ${s.type || "any"}` +
              `${limits ? "; " + limits : ""})`));
          }
          section.append(list);
        }
        if (op.requestBody) {
          section.append(el("p", "muted", "body: " + Object.keys(op.requestBody.content || {}).join(" or ")));
        }
        main.append(section);
      }
    }
  } catch (err) {
    main.replaceChildren(el("p", null, `cannot load /openapi.json: ${err.message}`));
  }
});
