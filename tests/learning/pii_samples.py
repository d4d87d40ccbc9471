"""Personal-data samples, Korean and English, at least 30 per kind: (kind, sentence, the secret it holds).

Each sentence is what a team member might really type; the secret is the exact text that must not survive redaction.
"""

from __future__ import annotations

from bot.learning.redaction import PiiKind

Sample = tuple[PiiKind, str, str]

EMAILS: list[Sample] = [
    (PiiKind.EMAIL, f"{before}{secret}{after}", secret)
    for before, secret, after in [
        ("제 메일은 ", "hong.gildong@example.com", " 이에요."),
        ("연락은 ", "kim_minsu@naver.com", "으로 주세요"),
        ("Mail me at ", "jane.doe@company.co.kr", " please."),
        ("", "park+hanbot@gmail.com", " 로 보내줘"),
        ("CC ", "team-lead@corp.example.org", " on it."),
        ("이메일 주소: ", "lee.sujin@daum.net", ""),
        ("Send the invoice to ", "billing@startup.io", "."),
        ("담당자 ", "choi99@kakao.com", "에게 물어보세요"),
        ("my work email is ", "j.smith@university.edu", ""),
        ("회신 주소는 ", "noreply.hr@samsung.com", "입니다"),
        ("<", "alice@example.net", ">"),
        ("(", "bob.lee@hanbot.dev", ")"),
        ("문의: ", "support@shop.co.kr", " 또는 전화"),
        ("Forward it to ", "ops_oncall@infra.example.com", " asap"),
        ("계정 ", "user123@outlook.com", "로 로그인이 안 돼요"),
        ("Her address is ", "maria.garcia@mail.example.es", "."),
        ("", "jung.hoseok@lgcns.com", "으로 초대장 보내 주세요"),
        ("ping ", "dev.team@github.example.com", " about the release"),
        ("메일: ", "yoon_ji-woo@hanmail.net", ""),
        ("Reply-To: ", "x.y.z@sub.domain.example.co.uk", ""),
        ("제 개인 메일 ", "sunny0301@nate.com", " 이요"),
        ("contact ", "kevin.obrien@example.ie", " for access"),
        ("", "admin@localhost.localdomain", " 은 테스트용이에요"),
        ("Can you add ", "new.hire2024@corp.example.com", " to the channel?"),
        ("인사팀 ", "hr-korea@company.com", "으로 서류 제출"),
        ("The reporter was ", "anon.tipster@protonmail.com", "."),
        ("", "seo.yeon@kaist.ac.kr", " 교수님께 메일 드렸어요"),
        ("email=", "test.user@example.com", "&x=1"),
        ("받는 사람: ", "kang.daniel@coupang.com", ", 참조: 없음"),
        ("Escalate to ", "security@bank.example.com", " now"),
        ("전 ", "mj.kim@example.com", " 써요"),
        ("alt ", "first.last@EXAMPLE.com", " works too"),
    ]
]

PHONES: list[Sample] = [
    (PiiKind.PHONE, f"{before}{secret}{after}", secret)
    for before, secret, after in [
        ("제 번호는 ", "010-1234-5678", "이에요"),
        ("전화 주세요 ", "010 9876 5432", ""),
        ("연락처 ", "01055556666", "로 문자 주세요"),
        ("Call me at ", "+82 10 1234 5678", "."),
        ("회사 대표번호 ", "02-123-4567", " 입니다"),
        ("Seoul office: ", "02-3456-7890", ""),
        ("부산 지사 ", "051-234-5678", "로 연락"),
        ("경기 ", "031-987-6543", " 번으로 전화 부탁"),
        ("My cell is ", "+82-10-2345-6789", ""),
        ("인터넷 전화 ", "070-1234-5678", "으로 걸어 주세요"),
        ("고객센터 ", "1588-1234", "에 문의하세요"),
        ("Reach the desk at ", "(02) 555-1234", "."),
        ("엄마 번호 ", "010.2222.3333", " 저장해 둬"),
        ("US office ", "+1 (415) 555-0132", ""),
        ("call ", "415-555-0199", " after 6pm"),
        ("London: ", "+44 20 7946 0958", ""),
        ("Tokyo branch ", "+81-3-1234-5678", " is closed today"),
        ("대구 ", "053-123-4567", ""),
        ("제 폰 ", "011-345-6789", " 아직 써요"),
        ("휴대폰: ", "016-234-5678", ""),
        ("+82 ", "+82 2 123 4567", " 서울 본사"),
        ("international: ", "0082-10-1111-2222", ""),
        ("My number: ", "(212) 555-0147", " (NYC)"),
        ("대전 연구소 ", "042-867-5309", ""),
        ("광주 ", "062-222-3333", "로 팩스"),
        ("Text ", "010-7777-8888", " if urgent"),
        ("비상 연락망 ", "010-4321-8765", ", 팀장님"),
        ("제주 ", "064-740-6000", " 관광안내"),
        ("Call the hotline ", "1644-0000", "."),
        ("번호 바뀌었어요 → ", "010-5678-1234", ""),
        ("spouse ", "+82 (0)10-3333-4444", ""),
        ("fax ", "02.567.8901", " (old)"),
    ]
]

RRNS: list[Sample] = [
    (PiiKind.RRN, f"{before}{secret}{after}", secret)
    for before, secret, after in [
        ("주민등록번호 ", "900101-1234567", " 입니다"),
        ("주민번호는 ", "850315-2345678", "예요"),
        ("RRN: ", "990909-1122334", ""),
        ("My resident number is ", "010203-3456789", "."),
        ("", "751231-2987654", " 으로 본인인증 했어요"),
        ("주민번호 ", "8803051234567", " 맞나요?"),
        ("외국인등록번호 ", "920817-5123456", ""),
        ("ID number ", "031122-4234567", " (born 2003)"),
        ("신청서에 ", "660606-1765432", " 적었어요"),
        ("주민 ", "701010 - 2345678", ""),
        ("please verify ", "950505-1010101", ""),
        ("아이 주민번호 ", "150721-3123456", ""),
        ("resident reg. no. ", "800229-2111111", " on the form"),
        ("", "911111-1999999", "는 제 거예요"),
        ("번호: ", "770707-1357913", ""),
        ("The applicant's RRN is ", "681225-2468024", "."),
        ("주민등록번호(", "930303-2020202", ")"),
        ("sent ", "020202-4000001", " by mistake, delete it"),
        ("주민번호 뒷자리 포함 ", "881111-1888888", ""),
        ("rrn=", "970430-2765432", ";"),
        ("아빠 ", "620515-1515151", ""),
        ("등록번호 ", "851010-6123456", " (외국인)"),
        ("ssn-like ", "000101-3000000", " test"),
        ("주민번호 ", "790825-1******", " 로 가려서 보내요"),
        ("Korean ID: ", "840412-2345123", ""),
        ("", "930101 1234567", " 띄어쓰기로 써도"),
        ("신분증 번호 ", "061130-4123987", ""),
        ("Her RRN ", "711212-2212121", " was leaked"),
        ("본인확인용 ", "960606-1606060", ""),
        ("주민번호 ", "8201011234567", " 하이픈 없이"),
        ("carer's number ", "590707-1707070", ""),
    ]
]

CARDS: list[Sample] = [
    (PiiKind.CARD, f"{before}{secret}{after}", secret)
    for before, secret, after in [
        ("카드번호 ", "4111-1111-1111-1111", " 입니다"),
        ("Card: ", "4111 1111 1111 1111", ""),
        ("", "5500000000000004", " 로 결제해 주세요"),
        ("법인카드 ", "9410-1234-5678-9012", ""),
        ("Amex ", "3782 822463 10005", " exp 12/27"),
        ("My visa is ", "4012888888881881", "."),
        ("신용카드 ", "5105-1051-0510-5100", " 유효기간 03/26"),
        ("card number: ", "6011 1111 1111 1117", ""),
        ("체크카드 ", "9411 2222 3333 4444", ""),
        ("Diners ", "3056-930902-5904", ""),
        ("please charge ", "4242 4242 4242 4242", ""),
        ("카드 ", "5555555555554444", " 한도 초과래요"),
        ("company card ", "3714-496353-98431", " (Amex)"),
        ("", "4000-0566-5566-5556", " 이걸로 주문했어요"),
        ("JCB ", "3530 1113 3330 0000", ""),
        ("UnionPay ", "6200000000000005", ""),
        ("카드번호는 ", "4988 4388 4388 4305", "예요"),
        ("Use ", "2223-0031-2200-3222", " for the conference"),
        ("국민카드 ", "9445-0012-3456-7890", ""),
        ("card=", "4917610000000000", "&cvv=123"),
        ("Old card ", "5200 8282 8282 8210", " was cancelled"),
        ("삼성카드 ", "5310-1234-1234-1234", ""),
        ("", "4000 0027 6000 3184", " 3DS 테스트 카드"),
        ("the corporate Visa ", "4571-7360-0000-0008", ""),
        ("하나카드 ", "4599 1234 5678 9010", ""),
        ("Maestro ", "6759 6498 2643 8453", ""),
        ("현대카드 ", "5433-3333-4444-5555", " 로 결제"),
        ("virtual card ", "4000002500003155", ""),
        ("비씨카드 ", "9490 0000 1111 2222", ""),
        ("Discover ", "6011000990139424", ""),
        ("롯데카드 ", "4673-0912-3456-7812", " 분실 신고"),
        ("test card ", "4000 0000 0000 0077", ""),
    ]
]

ACCOUNTS: list[Sample] = [
    (PiiKind.ACCOUNT, f"{before}{secret}{after}", secret)
    for before, secret, after in [
        ("신한은행 ", "110-123-456789", " 로 입금해 주세요"),
        ("국민 ", "123456-78-901234", ""),
        ("우리은행 ", "1002-123-456789", " 예금주 홍길동"),
        ("농협 ", "352-1234-5678-93", ""),
        ("카카오뱅크 ", "3333-01-1234567", "로 보내줘"),
        ("하나은행 ", "123-456789-01234", ""),
        ("기업은행 ", "010-123456-01-011", ""),
        ("계좌 ", "110234567890", " 입니다"),
        ("계좌번호: ", "94420200123456", ""),
        ("account no. ", "000123456789", " at Chase"),
        ("Wire it to account ", "9876543210", "."),
        ("acct # ", "123-4567-890", ""),
        ("IBAN ", "DE89 3704 0044 0532 0130 00", ""),
        ("토스뱅크 ", "1000-1234-5678", ""),
        ("SC제일 ", "123-45-678901", ""),
        ("케이뱅크 ", "100-123-456789", ""),
        ("부산은행 ", "101-2034-5678-09", ""),
        ("입금 ", "356-0123-4567-83", " 부탁해요"),
        ("my account number is ", "4455667788", ""),
        ("새마을금고 ", "9002-1234-5678-9", ""),
        ("우체국 ", "012345-01-123456", ""),
        ("Account: ", "12-3456-7890123", ""),
        ("급여 계좌 ", "620-123456-789", ""),
        ("회비는 ", "3333-05-9876543", " (카카오) 로"),
        ("acct no. ", "2468013579", ""),
        ("환불 계좌 ", "110-987-654321", ""),
        ("씨티 ", "123-12345-123", ""),
        ("Send the deposit to acct ", "55501234567", ""),
        ("수협 ", "1010-1234-5678", ""),
        ("계좌번호는 ", "301-0123-4567-81", "이에요"),
        ("account number ", "6543210987654", " (savings)"),
    ]
]

MENTIONS: list[Sample] = [
    (PiiKind.MENTION if secret.startswith("<") else PiiKind.ID, f"{before}{secret}{after}", secret)
    for before, secret, after in [
        ("", "<@U123ABC>", " 이거 봐 주세요"),
        ("ask ", "<@U02ABCDEF12>", " about it"),
        ("", "<@!123456789012345678>", " 님 확인 부탁"),
        ("thanks ", "<@987654321098765432>", "!"),
        ("see ", "<#C123>", " for details"),
        ("", "<#C0123ABCD|general>", " 채널에 올렸어요"),
        ("role ping ", "<@&112233445566778899>", ""),
        ("", "<#876543210987654321>", " 에서 얘기해요"),
        ("cc ", "<@W0ABCDEF12|minsu>", ""),
        ("", "<!subteam^S0123ABCD|devs>", " 모두 확인해 주세요"),
        ("user id ", "U0G9QF9C6", " 에게 권한 주세요"),
        ("Slack id: ", "U024BE7LH", ""),
        ("channel ", "C024BE91L", " is archived"),
        ("DM channel ", "D024BE91M", ""),
        ("디스코드 아이디 ", "123456789012345678", " 입니다"),
        ("my discord id is ", "80351110224678912", ""),
        ("", "<@U04KXYZ123>", "님이 물어보셨어요"),
        ("reply to ", "<@!80351110224678912>", ""),
        ("", "<@U0123456789>", " please review"),
        ("team ", "T0123ABCDE", " workspace"),
        ("", "<@UABC12345|jane>", " 확인"),
        ("assign to ", "<@U05QWERTY1>", ""),
        ("", "<#C07ZXCVBNM>", " 공지 채널"),
        ("bot id ", "B01ABCDEFGH", ""),
        ("", "<@!222333444555666777>", " 님이 관리자예요"),
        ("guild ", "1098765432109876543", ""),
        ("", "<@1122334455667788990>", " 축하해요"),
        ("group ", "G0ABCD1234", " private"),
        ("workspace user ", "W012A3CDE", ""),
        ("", "<#C1|x>", " tiny"),
        ("저 멘션은 ", "<@U999ZZZ>", " 이에요"),
    ]
]

ALL_SAMPLES: dict[str, list[Sample]] = {
    "email": EMAILS,
    "phone": PHONES,
    "rrn": RRNS,
    "card": CARDS,
    "account": ACCOUNTS,
    "mention": MENTIONS,
}

# ordinary text that must survive redaction unchanged
NOT_PII: list[str] = [
    "회의는 2024-01-15 오후 3시에 해요.",
    "The build takes 10:30 minutes on version 3.11.2.",
    "가격은 50,000원이고 재고는 1,234,567개예요.",
    "Python 3.12 and torch 2.11 are installed.",
    "UNDERSTAND the CONTRIBUTING guide first.",
    "Port 8080 and 443 are open.",
    "Step 7 of 20, loss 1.234.",
    "ISO date 2026-11-28, time 02:00 KST.",
    "약 20분 걸려요. 3층 회의실로 오세요.",
    "Issue #1234 was closed in PR 56.",
]
