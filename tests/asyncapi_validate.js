// Validates AsyncAPI documents with the official parser (@asyncapi/parser, installed into
// .cache/npm by scripts/npm-tools.sh) and prints their diagnostics as one JSON object on stdout,
// {file: [{"severity": "error" | "warning" | "info" | "hint", "code", "message", "path"}, ...]}.
// Exit status: 0 when no diagnostic is an error, 1 when one is, 2 when a file cannot be read.
//     node tests/asyncapi_validate.js asyncapi.json [more.json ...]
"use strict";
const fs = require("fs");
const path = require("path");

const parserPath = path.resolve(__dirname, "..", ".cache", "npm", "node_modules", "@asyncapi", "parser");
const { Parser } = require(parserPath);
const SEVERITY = ["error", "warning", "info", "hint"];

async function main() {
  const parser = new Parser();
  const result = {};
  let failed = false;
  for (const file of process.argv.slice(2)) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      console.error(`asyncapi_validate: cannot read ${file}: ${err.message}`);
      return 2;
    }
    const diagnostics = await parser.validate(text);
    result[file] = diagnostics.map((d) => ({
      severity: SEVERITY[d.severity] || String(d.severity),
      code: d.code,
      message: d.message,
      path: (d.path || []).join("."),
    }));
    failed = failed || result[file].some((d) => d.severity === "error");
  }
  console.log(JSON.stringify(result, null, 1));
  return failed ? 1 : 0;
}

main().then((code) => process.exit(code), (err) => {
  console.error(`asyncapi_validate: ${err.stack || err}`);
  process.exit(2);
});
