// The little persistence the binding cache needs. It is the subset of services/common/store's
// Store interface that bindings use, so a common Store can be passed in as it is.
import { createClient, type RedisClientType } from "redis";

export interface BindingKv {
  get(key: string): Promise<string | null>;
  /** Sets key only if its value is `expected` (null: absent); returns whether it did. */
  compareAndSet(key: string, expected: string | null, value: string): Promise<boolean>;
  del(key: string): Promise<boolean>;
  /** Every key starting with prefix, with its value, sorted by key. */
  scan(prefix: string): Promise<Array<[string, string]>>;
  close(): Promise<void>;
}

export class MemoryKv implements BindingKv {
  private readonly data = new Map<string, string>();

  async get(key: string): Promise<string | null> {
    return this.data.get(key) ?? null;
  }

  async compareAndSet(key: string, expected: string | null, value: string): Promise<boolean> {
    if ((this.data.get(key) ?? null) !== expected) return false;
    this.data.set(key, value);
    return true;
  }

  async del(key: string): Promise<boolean> {
    return this.data.delete(key);
  }

  async scan(prefix: string): Promise<Array<[string, string]>> {
    return [...this.data.entries()]
      .filter(([k]) => k.startsWith(prefix))
      .sort(([a], [b]) => (a < b ? -1 : 1));
  }

  async close(): Promise<void> {}
}

// Atomic on the server: compare the current value (or its absence) and set.
const CAS = `
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1`;

export class RedisKv implements BindingKv {
  private constructor(private readonly client: RedisClientType) {}

  static async connect(url: string): Promise<RedisKv> {
    const client = createClient({ url, socket: { connectTimeout: 5000 } }) as RedisClientType;
    client.on("error", () => undefined); // reconnects on its own; commands wait meanwhile
    await client.connect();
    return new RedisKv(client);
  }

  async get(key: string): Promise<string | null> {
    return (await this.client.get(key)) as string | null;
  }

  async compareAndSet(key: string, expected: string | null, value: string): Promise<boolean> {
    const r = await this.client.eval(CAS, {
      keys: [key],
      arguments: [expected === null ? "1" : "0", expected ?? "", value],
    });
    return Number(r) === 1;
  }

  async del(key: string): Promise<boolean> {
    return (await this.client.del(key)) > 0;
  }

  async scan(prefix: string): Promise<Array<[string, string]>> {
    const match = `${prefix.replace(/[*?[\]\\]/g, "\\$&")}*`;
    const keys: string[] = [];
    for await (const batch of this.client.scanIterator({ MATCH: match, COUNT: 200 })) keys.push(...batch);
    keys.sort();
    if (keys.length === 0) return [];
    const values = await this.client.mGet(keys);
    const out: Array<[string, string]> = [];
    keys.forEach((k, i) => {
      const v = values[i];
      if (typeof v === "string") out.push([k, v]);
    });
    return out;
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}

/** A redis:// URL gives Redis; nothing gives the in-process map. */
export async function openBindingKv(url?: string): Promise<BindingKv> {
  if (!url) return new MemoryKv();
  if (!/^rediss?:\/\//.test(url))
    throw new Error(`unsupported binding store URL '${url}' (want redis://HOST:PORT)`);
  return RedisKv.connect(url);
}
