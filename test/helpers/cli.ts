// Runs the avgate CLI from source (tests spawn `node --import tsx test/helpers/cli.ts ARGS`).
import { main } from '../../src/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`avgate: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 2;
  },
);
