// Node.js OpenFeature clients of the control plane, driven by tests/test_interop_node.py.
//
// Two providers evaluate the same cases: @openfeature/flagd-provider in in-process mode, syncing
// flags from the control plane's flagd.sync.v1 server, and @openfeature/ofrep-provider against
// its OFREP endpoints. The script reads one JSON request per stdin line,
//   {"cases": [{"flag": "...", "type": "string|boolean|number|object", "default": ..., "context": {...}}]}
// answers one JSON line {"sync": [...], "ofrep": [...]} with each case's evaluation details, and
// exits when stdin closes. It prints {"ready": true} once both providers are ready.
//
// Usage: node interop.mjs <sync-host> <sync-port> <ofrep-base-url>

import { createInterface } from 'node:readline';
import { OpenFeature } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const [host, port, ofrepUrl] = process.argv.slice(2);

await OpenFeature.setProviderAndWait(
  'sync',
  new FlagdProvider({ resolverType: 'in-process', host, port: Number(port), deadlineMs: 5000 }),
);
await OpenFeature.setProviderAndWait('ofrep', new OFREPProvider({ baseUrl: ofrepUrl }));

const getters = {
  boolean: (client) => client.getBooleanDetails.bind(client),
  string: (client) => client.getStringDetails.bind(client),
  number: (client) => client.getNumberDetails.bind(client),
  object: (client) => client.getObjectDetails.bind(client),
};

async function evaluate(domain, cases) {
  const client = OpenFeature.getClient(domain);
  const answers = [];
  for (const item of cases) {
    const details = await getters[item.type](client)(item.flag, item.default, item.context ?? {});
    answers.push({
      flag: item.flag,
      value: details.value,
      variant: details.variant ?? null,
      reason: details.reason ?? null,
      errorCode: details.errorCode ?? null,
      flagMetadata: details.flagMetadata ?? {},
    });
  }
  return answers;
}

process.stdout.write(JSON.stringify({ ready: true }) + '\n');

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  const request = JSON.parse(line);
  const answer = {
    sync: await evaluate('sync', request.cases),
    ofrep: await evaluate('ofrep', request.cases),
  };
  process.stdout.write(JSON.stringify(answer) + '\n');
}

await OpenFeature.close();
process.exit(0);
