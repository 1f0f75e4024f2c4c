// uvu 0.5 has no assert.rejects: awaits fn and checks that it failed with a matching message.
import * as assert from "uvu/assert";

export async function rejects(fn: () => Promise<unknown>, pattern: RegExp): Promise<void> {
  try {
    await fn();
  } catch (err) {
    assert.match((err as Error).message, pattern);
    return;
  }
  assert.unreachable(`expected a rejection matching ${pattern}`);
}
