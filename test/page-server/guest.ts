// Test helper: the built guest, building it first when deploy/guest/out is missing
// (CI runs `vmhop guest build` in its set-up, so this is only a fallback).
import { buildGuest } from "../../deploy/guest/build/build.js";
import { type GuestArtefacts, guestArtefacts } from "../../deploy/guest/build/paths.js";

export async function ensureGuest(): Promise<GuestArtefacts> {
  try {
    return guestArtefacts();
  } catch {
    await buildGuest({ progress: (l) => console.log(`guest: ${l}`) });
    return guestArtefacts();
  }
}
