// Bounded waits: a test never waits on anything without a bound of its own that names what it
// waited for, so a hang fails in seconds with that name instead of at the runner's 600 s timeout.

/**
 * `promise`'s result, or a rejection "timed out after MS ms waiting for WHAT" once `ms` pass
 * first. The promise itself is not cancelled (close what it waits on in a finally/after hook).
 */
export function within<T>(promise: PromiseLike<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    promise.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (err) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

/**
 * Polls `fn` every `everyMs` until it returns something other than undefined/false (its result),
 * or rejects "timed out after MS ms waiting for WHAT" (with fn's last error, if it threw).
 */
export async function until<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  ms: number,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await within(Promise.resolve(fn()), Math.max(1, deadline - Date.now()), what);
      if (v !== undefined && v !== false) return v as T;
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) {
      const cause =
        last instanceof Error && !last.message.startsWith("timed out after")
          ? `; last error: ${last.message}`
          : "";
      throw new Error(`timed out after ${ms} ms waiting for ${what}${cause}`);
    }
    await new Promise((r) => setTimeout(r, Math.min(everyMs, Math.max(0, deadline - Date.now()))));
  }
}
