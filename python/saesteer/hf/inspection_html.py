"""One self-contained HTML page for :func:`saesteer.inspect` results, the view Neuronpedia shows.

Per SAE: a feature selector (the tracked features, or any id), the prompts' tokens coloured by the
chosen feature's activation, each token's top features on hover (its tooltip) and on click (the
detail panel), and each prompt's strongest features by max and by mean (click one to colour by it).
Everything is in the file: inline CSS and script, no fonts, images or URLs, so it opens offline.
"""

from __future__ import annotations

import html
import json
from typing import Mapping, Sequence

from .inspection import Inspection

__all__ = ["render_html"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px}h3{font-size:14px;margin:18px 0 6px;color:#444}
.meta{color:#666;font-size:12px}
.controls{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd;z-index:2}
.controls select,.controls input{font:inherit;padding:2px 4px}
.layout{display:flex;gap:18px;align-items:flex-start}.prompts{flex:1;min-width:0}
.detail{width:300px;position:sticky;top:54px;border:1px solid #ddd;border-radius:6px;padding:8px 10px;font-size:12px;background:#fafafa}
.tokens{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word;line-height:1.9}
.tok{border-radius:3px;padding:1px 0;cursor:pointer;border:1px solid transparent}
.tok:hover{border-color:#888}.tok.sel{border-color:#000}
.bos{color:#888}
table{border-collapse:collapse;font-size:12px;margin:4px 0}td,th{padding:1px 8px;text-align:right;border-bottom:1px solid #eee}
th{color:#555;font-weight:600}td.f,th.f{text-align:left}
.feat{color:#0645ad;cursor:pointer;text-decoration:underline dotted}
.tops{display:flex;gap:24px;flex-wrap:wrap}
.legend{display:inline-block;width:120px;height:10px;vertical-align:middle;
 background:linear-gradient(90deg,rgba(255,110,0,0),rgba(255,110,0,1));border:1px solid #ccc}
"""

_JS = """
(function(){
function fmt(v){return (Math.round(v*1000)/1000).toString();}
document.querySelectorAll('section.sae').forEach(function(sec){
  var tracked=JSON.parse(sec.querySelector('script.tracked').textContent);
  var sel=sec.querySelector('select.feature'), num=sec.querySelector('input.feature-id');
  var note=sec.querySelector('.note'), detail=sec.querySelector('.detail-body');
  var toks=sec.querySelectorAll('.tok');
  function actOf(t,f){
    var j=tracked.indexOf(f);
    if(j>=0){return parseFloat(t.dataset.acts.split(',')[j]);}
    var top=t.dataset.top?t.dataset.top.split(';'):[];
    for(var i=0;i<top.length;i++){var p=top[i].split(':');if(parseInt(p[0])===f){return parseFloat(p[1]);}}
    return 0;
  }
  function colour(f){
    var vals=[],mx=0;
    toks.forEach(function(t){var v=actOf(t,f);vals.push(v);if(v>mx){mx=v;}});
    toks.forEach(function(t,i){var a=mx>0?Math.max(0,vals[i])/mx:0;
      t.style.background=a>0?'rgba(255,110,0,'+(0.12+0.88*a).toFixed(3)+')':'';
      t.dataset.act=fmt(vals[i]);});
    note.textContent='feature '+f+': max '+fmt(mx)+(tracked.indexOf(f)<0?' (not tracked: only tokens where it is in the top k are coloured)':'');
    if(String(sel.value)!==String(f)){sel.value=tracked.indexOf(f)>=0?String(f):'';}
    num.value=f;
  }
  function show(t){
    toks.forEach(function(o){o.classList.remove('sel');});t.classList.add('sel');
    var rows=(t.dataset.top?t.dataset.top.split(';'):[]).map(function(p){var q=p.split(':');
      return '<tr><td class="f"><span class="feat" data-feature="'+q[0]+'">'+q[0]+'</span></td><td>'+fmt(parseFloat(q[1]))+'</td></tr>';});
    detail.innerHTML='<div><b>token</b> '+t.dataset.pos+': <code></code></div><div>colour feature: '+t.dataset.act+'</div>'+
      '<table><tr><th class="f">feature</th><th>activation</th></tr>'+rows.join('')+'</table>';
    detail.querySelector('code').textContent=JSON.stringify(t.textContent);
  }
  sel.addEventListener('change',function(){if(sel.value!==''){colour(parseInt(sel.value));}});
  num.addEventListener('change',function(){var f=parseInt(num.value);if(!isNaN(f)){colour(f);}});
  toks.forEach(function(t){t.addEventListener('click',function(){show(t);});});
  sec.addEventListener('click',function(e){var f=e.target.dataset&&e.target.dataset.feature;if(f!==undefined&&f!==''){colour(parseInt(f));}});
  colour(parseInt(sec.dataset.initial));
});
})();
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _shown(tok: str) -> str:
    """A token's text made visible: newlines as a return sign, tabs as an arrow."""
    return tok.replace("\n", "\u21b5\n").replace("\t", "\u21e5")


def _section(name: str, res: Inspection, labels: Sequence[str], feature: int | None) -> str:
    first = res.top(0, "max", 1) if len(res) else []
    initial = feature if feature is not None else (first[0][0] if first else (res.tracked[0] if res.tracked else 0))
    peak = res.tracked_values.amax(dim=(0, 1)) if res.tracked_values is not None and res.tracked else None
    opts = ['<option value="">(choose)</option>'] + [
        f'<option value="{f}"{" selected" if f == initial else ""}>feature {f} (max {float(peak[j]):.3g})</option>'
        for j, f in enumerate(res.tracked)]
    out = [f'<section class="sae" data-sae="{_e(name)}" data-initial="{int(initial)}">',
           f'<h2>{_e(name)} <span class="meta">{_e(res.hook_name)} &middot; top {res.k} per token</span></h2>',
           f'<script type="application/json" class="tracked">{json.dumps(list(res.tracked))}</script>',
           '<div class="controls">colour by <select class="feature">' + "".join(opts) + '</select> or id '
           '<input class="feature-id" type="number" min="0" style="width:7em"> '
           '<span class="legend"></span> <span class="note meta"></span></div>',
           '<div class="layout"><div class="prompts">']
    for r in range(len(res)):
        label = labels[r] if r < len(labels) else f"prompt {r + 1}"
        spans = []  # joined without separators: the tokens div keeps white space as it is
        bos = ~res.summary_mask[r] & res.mask[r]
        for t, tok, feats in res.token_features(r):
            acts = ",".join(f"{float(v):.4g}" for v in res.tracked_values[r, t].tolist()) if res.tracked else ""
            top = ";".join(f"{i}:{v:.4g}" for i, v in feats)
            tip = f"token {t}: " + (", ".join(f"{i}={v:.3g}" for i, v in feats) or "no feature fires")
            cls = "tok bos" if bool(bos[t]) else "tok"
            spans.append(f'<span class="{cls}" data-pos="{t}" data-acts="{acts}" data-top="{top}" title="{_e(tip)}">'
                         f"{_e(_shown(tok or ''))}</span>")
        out.append(f'<div class="prompt"><h3>{_e(label)}</h3><div class="tokens">{"".join(spans)}</div><div class="tops">')
        for by in ("max", "mean"):
            rows = "".join(f'<tr><td class="f"><span class="feat" data-feature="{i}">{i}</span></td><td>{v:.4g}</td></tr>'
                           for i, v in res.top(r, by))
            out.append(f'<table class="top-{by}"><tr><th class="f">feature</th><th>{by} activation</th></tr>{rows}</table>')
        out.append("</div></div>")
    out.append('</div><div class="detail"><b>Token detail</b><div class="detail-body meta">click a token</div></div></div>')
    out.append("</section>")
    return "\n".join(out)


def render_html(results: Inspection | Mapping[str, Inspection], labels: Sequence[str] = (), *, title: str = "saesteer inspect",
                subtitle: str = "", feature: int | None = None) -> str:
    """The page for one :class:`Inspection` or ``{name: Inspection}`` (a section per SAE); ``labels``
    name the prompts; ``feature``: the feature the tokens are first coloured by (default: the first
    prompt's strongest)."""
    if isinstance(results, Inspection):
        results = {results.hook_name or "SAE": results}
    body = "\n".join(_section(name, res, list(labels), feature) for name, res in results.items())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><div class=\"meta\">{_e(subtitle)}</div>{body}"
            f"<script>{_JS}</script></body></html>\n")
