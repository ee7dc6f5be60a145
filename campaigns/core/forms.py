"""Sign-up tools rendered purely from a shop's settings (no I/O): the hosted form page, the embeddable
pop-up script, and the social ``sms:`` link that pre-fills the keyword (seed 002 "list builders").

The legal text shown by the form and the pop-up is the disclosure recorded with each opt-in through
them: the server records *its own* copy for the version the page names, never text sent by the
browser. Every user-editable text is HTML-escaped; colours and fonts are validated by the config."""

from __future__ import annotations

import html
from urllib.parse import quote

import msgspec

from campaigns.config import FormSettings

_FORM_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{margin:0;background:{bg};color:{fg};font-family:{font};display:flex;min-height:100vh;align-items:center;justify-content:center}}
form{{max-width:26rem;padding:2rem}} h1{{font-size:1.6rem}} input{{display:block;width:100%;box-sizing:border-box;padding:.7rem;margin:.5rem 0;font:inherit}}
button{{background:{accent};color:#fff;border:0;padding:.8rem 1.2rem;font:inherit;cursor:pointer;width:100%}}
small{{display:block;margin-top:1rem;opacity:.8;line-height:1.35}}
</style></head><body>
<form method="post" action="{action}" data-sluice-form="hosted">
<h1>{title}</h1><p>{text}</p>
<input type="tel" name="phone" placeholder="Mobile number" autocomplete="tel" required>
{email}<input type="hidden" name="form_id" value="hosted"><input type="hidden" name="legal_version" value="{version}">
<input type="hidden" name="page_url" value="">
<button type="submit">{button}</button>
<small data-sluice-legal>{legal}</small>
</form>
<script>document.querySelector('input[name=page_url]').value=document.referrer||location.href;</script>
</body></html>
"""

_POPUP = """(function(){
var C=%(config)s;
var KEY="sluice_popup_"+C.tenant;
try{var last=+localStorage.getItem(KEY)||0;if(Date.now()-last<C.every_days*864e5)return;}catch(e){}
var shown=false;
function esc(s){var d=document.createElement("div");d.textContent=s;return d.innerHTML;}
function show(){
 if(shown)return;shown=true;
 try{localStorage.setItem(KEY,String(Date.now()));}catch(e){}
 var o=document.createElement("div");o.setAttribute("data-sluice-popup","");
 o.style.cssText="position:fixed;inset:0;background:rgba(0,0,0,.45);display:flex;align-items:center;justify-content:center;z-index:2147483647";
 o.innerHTML='<form style="background:'+C.background+';color:'+C.foreground+';font-family:'+C.font+';max-width:24rem;padding:1.5rem;border-radius:8px;position:relative">'
  +'<button type="button" aria-label="Close" data-close style="position:absolute;top:.4rem;right:.6rem;background:none;border:0;font-size:1.4rem;color:inherit;cursor:pointer">&times;</button>'
  +'<h2 style="margin-top:0">'+esc(C.title)+'</h2><p>'+esc(C.text)+'</p>'
  +'<input type="tel" name="phone" required placeholder="Mobile number" style="width:100%%;padding:.6rem;box-sizing:border-box">'
  +(C.ask_email?'<input type="email" name="email" placeholder="Email (optional)" style="width:100%%;padding:.6rem;margin-top:.5rem;box-sizing:border-box">':'')
  +'<button type="submit" style="margin-top:.8rem;width:100%%;padding:.7rem;background:'+C.accent+';color:#fff;border:0;cursor:pointer">'+esc(C.button)+'</button>'
  +'<small style="display:block;margin-top:.8rem;opacity:.8">'+esc(C.legal_text)+'</small></form>';
 document.body.appendChild(o);
 o.querySelector("[data-close]").onclick=function(){o.remove();};
 o.querySelector("form").onsubmit=function(ev){ev.preventDefault();
  var f=ev.target,body={phone:f.phone.value,form_id:"popup",legal_version:C.legal_version,page_url:location.href};
  if(f.email&&f.email.value)body.email=f.email.value;
  fetch(C.action,{method:"POST",headers:{"content-type":"text/plain;charset=UTF-8"},body:JSON.stringify(body)})
   .then(function(r){return r.json();}).then(function(j){f.innerHTML="<p>"+esc(j.message||"")+"</p>";});};
}
if(C.trigger_delay_s!==null)setTimeout(show,C.trigger_delay_s*1000);
if(C.trigger_scroll_percent!==null)window.addEventListener("scroll",function(){
 var h=document.documentElement,p=(h.scrollTop+innerHeight)/h.scrollHeight*100;if(p>=C.trigger_scroll_percent)show();},{passive:true});
if(C.trigger_exit_intent)document.addEventListener("mouseout",function(e){if(!e.relatedTarget&&e.clientY<=0)show();});
})();
"""


def legal_text(form: FormSettings, shop: str) -> str:
    """The disclosure exactly as shown (``{shop}`` filled in)."""
    return form.legal_text.replace("{shop}", shop)


def form_page(form: FormSettings, *, shop: str, action: str) -> str:
    e = html.escape
    email = '<input type="email" name="email" placeholder="Email (optional)" autocomplete="email">\n' if form.ask_email else ""
    return _FORM_PAGE.format(title=e(form.title), text=e(form.text), button=e(form.button), legal=e(legal_text(form, shop)),
                             version=e(form.legal_version), action=e(action), email=email, bg=form.background,
                             fg=form.foreground, accent=form.accent, font=form.font)  # fmt: skip


def popup_script(form: FormSettings, *, tenant: str, shop: str, action: str) -> str:
    config = {"tenant": tenant, "action": action, "title": form.title, "text": form.text, "button": form.button,
              "legal_text": legal_text(form, shop), "legal_version": form.legal_version, "background": form.background,
              "foreground": form.foreground, "accent": form.accent, "font": form.font, "every_days": form.every_days,
              "trigger_scroll_percent": form.trigger_scroll_percent, "trigger_delay_s": form.trigger_delay_s,
              "trigger_exit_intent": form.trigger_exit_intent, "ask_email": form.ask_email}  # fmt: skip
    # JSON inside a script: "</" and U+2028/9 escaped so no text can close the script or break it.
    data = msgspec.json.encode(config).decode().replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return _POPUP % {"config": data}


def sms_link(sender: str, keyword: str) -> str:
    """A prefilled ``sms:`` link that texts ``keyword`` to ``sender`` (RFC 5724; ``?&body=`` is read by
    both iOS and Android)."""
    return f"sms:{quote(sender, safe='+')}?&body={quote(keyword, safe='')}"
