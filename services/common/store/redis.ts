// Redis store (node-redis). Conditional updates are Lua scripts so they are atomic on the
// server; keys live under a prefix so several meshes (or test runs) can share one Redis.
import { createClient, type RedisClientType } from "redis";
import { checkTtl, type SetOptions, type Store, StoreError, type Unsubscribe } from "./store.js";

const CAS = `
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1`;

const CAD = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

/** Escapes glob metacharacters so a prefix matches literally in SCAN MATCH. */
function globEscape(s: string): string {
  return s.replace(/[*?[\]\\]/g, "\\$&");
}

/**
 * A connected node-redis client. Once connected it reconnects with capped backoff (commands
 * wait in the queue); before that it fails fast, so a wrong URL or a Redis that is down is
 * reported instead of retried forever.
 */
async function connectClient(url: string, connectTimeoutMs: number, what = ""): Promise<RedisClientType> {
  let connected = false;
  const client = createClient({
    url,
    socket: {
      connectTimeout: connectTimeoutMs,
      reconnectStrategy: (retries: number, cause: Error) =>
        connected ? Math.min(50 * 2 ** retries, 2000) : cause,
    },
  }) as RedisClientType;
  // Errors surface on the commands; the event keeps node-redis from throwing globally.
  client.on("error", () => {});
  try {
    await client.connect();
    connected = true;
  } catch (err) {
    throw new StoreError(`cannot connect${what} to Redis at ${url}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return client;
}

export class RedisStore implements Store {
  readonly kind = "redis" as const;
  /** The connection subscriptions use (Redis allows nothing else on it), made on first use. */
  private subscriber?: Promise<RedisClientType>;

  private constructor(
    private readonly client: RedisClientType,
    private readonly url: string,
    private readonly prefix: string,
    private readonly connectTimeoutMs: number,
  ) {}

  static async connect(
    url: string,
    opts: { prefix?: string; connectTimeoutMs?: number } = {},
  ): Promise<RedisStore> {
    const timeout = opts.connectTimeoutMs ?? 5000;
    return new RedisStore(await connectClient(url, timeout), url, opts.prefix ?? "vmhop:", timeout);
  }

  private k(key: string): string {
    return this.prefix + key;
  }

  private async run<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw new StoreError(`redis ${what} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  get(key: string): Promise<string | null> {
    return this.run("GET", () => this.client.get(this.k(key)) as Promise<string | null>);
  }

  async set(key: string, value: string, opts?: SetOptions): Promise<void> {
    checkTtl(opts);
    await this.run("SET", () =>
      this.client.set(
        this.k(key),
        value,
        opts?.ttlMs ? { expiration: { type: "PX", value: opts.ttlMs } } : undefined,
      ),
    );
  }

  async del(key: string): Promise<boolean> {
    return (await this.run("DEL", () => this.client.del(this.k(key)))) > 0;
  }

  async compareAndSet(
    key: string,
    expected: string | null,
    value: string,
    opts?: SetOptions,
  ): Promise<boolean> {
    checkTtl(opts);
    const r = await this.run("CAS", () =>
      this.client.eval(CAS, {
        keys: [this.k(key)],
        arguments: [
          expected === null ? "1" : "0",
          expected ?? "",
          value,
          opts?.ttlMs ? String(opts.ttlMs) : "",
        ],
      }),
    );
    return r === 1;
  }

  async compareAndDelete(key: string, expected: string): Promise<boolean> {
    const r = await this.run("CAD", () =>
      this.client.eval(CAD, { keys: [this.k(key)], arguments: [expected] }),
    );
    return r === 1;
  }

  incr(key: string): Promise<number> {
    return this.run("INCR", () => this.client.incr(this.k(key)));
  }

  async scan(prefix: string): Promise<Array<[string, string]>> {
    const keys: string[] = [];
    await this.run("SCAN", async () => {
      for await (const batch of this.client.scanIterator({
        MATCH: globEscape(this.k(prefix)) + "*",
        COUNT: 500,
      })) {
        keys.push(...(batch as unknown as string[]));
      }
    });
    if (keys.length === 0) return [];
    const unique = [...new Set(keys)].sort();
    const values = (await this.run("MGET", () => this.client.mGet(unique))) as Array<string | null>;
    const out: Array<[string, string]> = [];
    unique.forEach((key, i) => {
      const v = values[i];
      if (v !== null) out.push([key.slice(this.prefix.length), v]);
    });
    return out;
  }

  async publish(channel: string, message: string): Promise<void> {
    await this.run("PUBLISH", () => this.client.publish(this.k(channel), message));
  }

  async subscribe(channel: string, onMessage: (message: string) => void): Promise<Unsubscribe> {
    // One connection for every subscription; a connect that failed is not kept, so the next
    // subscribe tries again.
    this.subscriber ??= connectClient(this.url, this.connectTimeoutMs, " (subscriber)");
    const connecting = this.subscriber;
    connecting.catch(() => {
      if (this.subscriber === connecting) this.subscriber = undefined;
    });
    const sub = await connecting;
    const listener = (message: string) => onMessage(message);
    await this.run("SUBSCRIBE", () => sub.subscribe(this.k(channel), listener));
    return async () => {
      await sub.unsubscribe(this.k(channel), listener);
    };
  }

  async close(): Promise<void> {
    const sub = this.subscriber;
    this.subscriber = undefined;
    await Promise.allSettled([sub?.then((c) => c.close()), this.client.close()]);
  }

  toString(): string {
    return `RedisStore(${this.url})`;
  }
}
