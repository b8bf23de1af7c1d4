// Validates an AsyncAPI document with the official parser (@asyncapi/parser, installed into
// .cache/npm by scripts/npm-tools.sh) and prints its diagnostics as one JSON array on stdout:
// [{"severity": "error" | "warning" | "info" | "hint", "code", "message", "path"}, ...].
// Exit status: 0 when no diagnostic is an error, 1 when one is, 2 when the file cannot be read.
//     node tests/asyncapi_validate.js asyncapi.json
"use strict";
const fs = require("fs");
const path = require("path");

const parserPath = path.resolve(__dirname, "..", ".cache", "npm", "node_modules", "@asyncapi", "parser");
const { Parser } = require(parserPath);
const SEVERITY = ["error", "warning", "info", "hint"];

async function main() {
  const file = process.argv[2];
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    console.error(`asyncapi_validate: cannot read ${file}: ${err.message}`);
    return 2;
  }
  const diagnostics = await new Parser().validate(text);
  const out = diagnostics.map((d) => ({
    severity: SEVERITY[d.severity] || String(d.severity),
    code: d.code,
    message: d.message,
    path: (d.path || []).join("."),
  }));
  console.log(JSON.stringify(out, null, 1));
  return out.some((d) => d.severity === "error") ? 1 : 0;
}

main().then((code) => process.exit(code), (err) => {
  console.error(`asyncapi_validate: ${err.stack || err}`);
  process.exit(2);
});
