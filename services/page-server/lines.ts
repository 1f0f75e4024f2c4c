// Line framing shared by the QMP codec and the serial console. Pure.

/**
 * Splits buffered bytes into complete lines (LF or CRLF); `rest` is an incomplete tail to
 * keep for the next chunk. Empty lines are dropped. Splitting on bytes keeps a multibyte
 * character cut between chunks intact.
 */
export function splitLines(buf: Buffer): { lines: string[]; rest: Buffer } {
  const lines: string[] = [];
  let start = 0;
  for (let nl = buf.indexOf(0x0a, start); nl !== -1; nl = buf.indexOf(0x0a, start)) {
    const line = buf.toString("utf8", start, nl).replace(/\r$/, "");
    if (line.trim() !== "") lines.push(line);
    start = nl + 1;
  }
  return { lines, rest: buf.subarray(start) };
}
