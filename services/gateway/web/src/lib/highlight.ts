export interface HighlightPart {
  text: string;
  mark: boolean;
}

/**
 * Split a search snippet "a <mark>b</mark> c" into text parts, the marked ones flagged.
 * Everything is returned as text for React to escape: the snippet is never parsed as HTML,
 * so any other tag in it stays literal.
 */
export function splitHighlighted(snippet: string): HighlightPart[] {
  const parts: HighlightPart[] = [];
  let mark = false;
  for (const piece of snippet.split(/(<mark>|<\/mark>)/)) {
    if (piece === '<mark>') mark = true;
    else if (piece === '</mark>') mark = false;
    else if (piece) {
      const last = parts[parts.length - 1];
      if (last && last.mark === mark) last.text += piece;
      else parts.push({ text: piece, mark });
    }
  }
  return parts;
}
