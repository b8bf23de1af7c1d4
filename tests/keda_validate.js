// Validates KEDA ScaledObjects against KEDA's CRD schema, as the npm package
// @kubernetes-models/keda ships it (the CRD's OpenAPI v3 schema compiled to a validator;
// installed into .cache/npm-keda by tests/test_deploy.py). Prints one JSON object on stdout,
// {file: null | "the validator's message"}. Exit status 0 when every file is valid, 1 otherwise.
//     node tests/keda_validate.js scaledobject.json [more.json ...]
"use strict";
const fs = require("fs");
const path = require("path");

const keda = path.resolve(__dirname, "..", ".cache", "npm-keda", "node_modules", "@kubernetes-models", "keda");
const { ScaledObject } = require(path.join(keda, "keda.sh", "v1alpha1", "ScaledObject"));

const result = {};
let failed = false;
for (const file of process.argv.slice(2)) {
  try {
    new ScaledObject(JSON.parse(fs.readFileSync(file, "utf8"))).validate();
    result[file] = null;
  } catch (err) {
    result[file] = String(err.message || err);
    failed = true;
  }
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(failed ? 1 : 0);
