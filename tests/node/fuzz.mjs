// Node.js side of tests/test_flagd_compat_fuzz.py: evaluate many flag documents in one process.
//
// Each document is loaded by the official @openfeature/flagd-provider in in-process mode from
// its own file (the provider's offline file source; evaluation is @openfeature/flagd-core's),
// registered under its own OpenFeature domain, and evaluated through a server SDK client, as an
// application would. The batch file holds
//   {"documents": [{"path": "...", "cases": [{"flag", "type", "default", "context"}]}]}
// and the script prints one JSON line per case, {"document": i, "case": j, "value", "variant",
// "reason", "errorCode"}, or {"document": i, "loadError": "..."} when the provider refuses the
// document, then {"done": true}.
//
// Usage: node fuzz.mjs <batch.json>

import { readFileSync } from 'node:fs';
import { OpenFeature } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';

const batch = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const getters = {
  boolean: (client) => client.getBooleanDetails.bind(client),
  string: (client) => client.getStringDetails.bind(client),
  number: (client) => client.getNumberDetails.bind(client),
  object: (client) => client.getObjectDetails.bind(client),
};

// Targeting errors are answers (reason ERROR), not news: keep the provider's logs quiet.
const quiet = { error() {}, warn() {}, info() {}, debug() {} };

function emit(line) {
  process.stdout.write(JSON.stringify(line) + '\n');
}

for (const [index, entry] of batch.documents.entries()) {
  const domain = `fuzz-${index}`;
  const provider = new FlagdProvider(
    { resolverType: 'in-process', offlineFlagSourcePath: entry.path },
    quiet,
  );
  try {
    await OpenFeature.setProviderAndWait(domain, provider);
  } catch (error) {
    emit({ document: index, loadError: String(error?.message ?? error) });
    await provider.onClose();
    continue;
  }
  const client = OpenFeature.getClient(domain);
  client.setLogger(quiet);
  for (const [position, item] of entry.cases.entries()) {
    const details = await getters[item.type](client)(item.flag, item.default, item.context);
    emit({
      document: index,
      case: position,
      value: details.value,
      variant: details.variant ?? null,
      reason: details.reason ?? null,
      errorCode: details.errorCode ?? null,
    });
  }
  await provider.onClose();
}

emit({ done: true });
await OpenFeature.close();
process.exit(0);
