/** The last path segment of a URL, decoded, as the object's file name (null when there is none or it is not a safe name). */
export function fileNameOf(url: string): string | null {
  try {
    const seg = new URL(url).pathname.split('/').pop() ?? '';
    const name = decodeURIComponent(seg);
    const clean = name.length > 0 && ![...name].some((c) => c.charCodeAt(0) < 0x20 || c === '/' || c === '\\');
    return clean ? name.slice(0, 255) : null;
  } catch {
    return null;
  }
}
