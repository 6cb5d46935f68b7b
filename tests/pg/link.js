// Makes the shared-library links each PostgreSQL package lists in native/pg-symlinks.json
// (its own install script would make them; `npm ci --ignore-scripts` does not run it), then
// checks that every version's `postgres --version` runs. Run by .ci/run after `npm ci`.
"use strict";
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");

const modules = path.join(__dirname, "node_modules");
const versions = Object.keys(require("./package.json").dependencies);
for (const name of versions) {
  const base = path.join(modules, name);
  const links = JSON.parse(fs.readFileSync(path.join(base, "native", "pg-symlinks.json")));
  for (const { source, target } of links) {
    const at = path.join(base, target);
    fs.rmSync(at, { force: true });
    fs.symlinkSync(path.basename(source), at);
  }
  const postgres = path.join(base, "native", "bin", "postgres");
  const version = execFileSync(postgres, ["--version"]).toString().trim();
  console.log(`${name}: ${version} (${path.dirname(postgres)})`);
}
